"""Studies: one-off measurements that explain a benchmark result (why a train step trails,
what XLA keeps in memory). They are not the benchmark: they time with its harness
(``benchmarks.harness``), build the project's models, and print what they found; their
committed outputs and analyses are in ``studies/results/``.

* ``python -m studies.backward_profile``: one BERT-base layer's backward pass in XLA:CPU,
  block by block and op by op;
* ``python -m studies.ffn_backward``: the feed-forward block's backward on (B, T, D)
  activations against (B*T, D) rows;
* ``python -m studies.memory_plan``: XLA's buffer plan of the jitted loss-and-gradient, per
  attention backend.
"""
