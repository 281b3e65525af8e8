"""The run layer: one trace on either body, its summary and its output folder.

Below `calibration` and `experiments`, above the bodies (`sim`, `backends`): `run.py` makes
a run (`simulate`, `run_real`), `summary.py` summarises it, `outputs.py` writes its folder,
`outdir.py` makes any output folder appear whole or not at all.
"""
