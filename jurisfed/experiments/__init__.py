"""The experiments of issues 7 and 8, run with the tiers' own components in one process.

  federation.py  the in-process harness: silos -> one regional per jurisdiction -> global
  hops.py        one hop on the wire: codec, error feedback, signed chunks, bytes, decoding
  tasks.py       digits split by jurisdiction, Synthetic(alpha, beta) (synthetic.py)
  attacks.py     sign flip, scaling, label flip
  robustness.py, privacy.py, communication.py, personalization.py   the experiments
  report.py, svg.py   Markdown, self-contained HTML with SVG charts, results.json
  cli.py         `jurisfed experiment ...`

Unlike the rest of `jurisfed`, this package imports a tier (`silo.trainer`, `silo.data`) on
purpose: silo training must be the silo's own. The CLI imports it only when an experiment runs.
"""
