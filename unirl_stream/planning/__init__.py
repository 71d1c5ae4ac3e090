"""``unirl-stream plan``: worker layouts of N GPUs from measured per-sample stage costs.

costs.py holds the cost-row contract and the JSONL loader, model.py the cost model
(splits, staleness gate, the synchronous baseline), report.py the printed and JSON output.
Nothing here imports torch: the command must start in well under a second.
"""
