"""Ready-made jobs built from the engine, one module each: the CLI's ``demo`` lives here.

A recipe strings library calls together (plan, train, score, draw) and reports as it goes; the
command-line module only parses its options, calls it and prints the result.
"""
