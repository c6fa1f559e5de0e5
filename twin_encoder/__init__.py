"""The ``twin-encoder`` command: check a checkpoint's parity, convert a Hugging Face folder,
run the benchmarks (``twin_encoder.cli``); ``twin_encoder.check`` is the parity check."""

__all__: list[str] = []
