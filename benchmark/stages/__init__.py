"""One plain function per pipeline stage, with typed arguments and a result object.

The command line (:mod:`mlproject`) parses arguments and calls exactly one of these; the whole
pipeline (:func:`benchmark.stages.pipeline.run_pipeline`) calls them in order and passes their
results on. A notebook can call them directly.
"""
