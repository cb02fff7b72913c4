"""One scan in, findings out: options (pipeline.options), the steps (pipeline.analyze), the
kernels' Python face (pipeline.ops). docs/design.md, "From a scan to findings"."""
