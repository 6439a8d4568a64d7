"""The mini benchmark's parts (`python -m open_clip_dive.minibench` runs them): methods (what is trained, with
which weight grid), plan (grid extension, seeds, cost), runner (resumable jobs, --only, --jobs), stats (mean and
standard error, frontier gaps, claim judgement), frontier (plots), page (docs/results/README.md)."""
