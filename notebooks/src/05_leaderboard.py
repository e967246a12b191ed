# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Leaderboard: which model to ship
#
# Every candidate of notebooks 01 to 04 (baseline, EfficientNet-Lite0, searched, pruned, decomposed, quantized,
# ONNX) in one table, ranked by the competition score, and the winner among the deployable ones.
# Reads every `<stage>/<candidate>/metrics.json` in the run directory; writes `leaderboard.csv`, and the winning
# ONNX model with its model card to `winner/` (the runner copies both into the report folder).

# %% tags=["parameters"]
run_dir = "../runs/scratch"
data = "synthetic"
rank_by = "score_published"  # or "score_relative" (the competition formula with our baseline as reference)

# %%
from IPython.display import display

from trashlib import report
from trashlib.candidate import STAGES, leaderboard, list_candidates, pareto_front, ship_winner
from trashlib.files import atomic_write_text
from trashlib.run import open_run

run = open_run(run_dir)
records = list_candidates(run, STAGES)
assert records, f"no candidate in {run.run_dir}: run notebooks 01 to 04 first"
board = leaderboard(records, rank_by)
print(f"{len(board)} candidates from stages {sorted(set(board['stage']))}")

# %% [markdown]
# ## The table
# Scores are `0.5 * t / t_ref + sigmoid(20 * (f1_ref - f1))` on the submit time `t` (the whole test split decoded
# from disk and predicted), lower is better: "published" with the competition's constants (f1_ref 0.70,
# t_ref 43.16 s), "relative" with our baseline's test F1 and submit time (the baseline scores 1.0). F1 is given on
# the whole test split and on its public and private halves; `flagged` says where a runtime failed and the fp32
# model stands in for it.

# %%
columns = [
    "stage",
    "model",
    "runtime",
    "image_size",
    "f1_test",
    "f1_public",
    "f1_private",
    "latency_b1_ms",
    "submit_s",
    "params",
    "macs",
    "size_bytes",
    "score_published",
    "score_relative",
    "deployable",
    "flagged",
]
display(board[columns].round(4))

# %% [markdown]
# ## The Pareto front
# Test macro-F1 against batch-1 latency (each candidate as measured in its own notebook; notebook 04's table has
# the interleaved comparison). The staircase joins the candidates that no other beats on both.

# %%
fig = report.plot_candidates(
    board.reset_index().to_dict("records"), title="every candidate: test macro-F1 against batch-1 latency"
)
front = pareto_front(board)
display(board.loc[front, ["stage", "runtime", "f1_test", "latency_b1_ms", rank_by]].round(4))

# %% [markdown]
# ## The winner
# The deployable candidate (an ONNX model with its model card) with the best `rank_by` score. Its ONNX file and
# model card are copied to `winner/`.

# %%
winner = ship_winner(run, board)
row = board.loc[winner.candidate]
print(
    f"winner: {winner.candidate} ({row['model']}, {row['runtime']}): test macro-F1 {row['f1_test']:.3f} "
    f"(public {row['f1_public']:.3f}, private {row['f1_private']:.3f}), {row['latency_b1_ms']:.2f} ms at batch 1, "
    f"submit {row['submit_s']:.2f} s, {rank_by} {row[rank_by]:.4f}"
)
atomic_write_text(run.path("leaderboard.csv"), board.to_csv())
run.headline(
    "05_leaderboard",
    {
        "candidates": len(board),
        "winner": winner.candidate,
        "winner_f1": round(float(row["f1_test"]), 4),
        "winner_latency_ms": round(float(row["latency_b1_ms"]), 3),
        "winner_score": round(float(row[rank_by]), 4),
    },
)

written = [run.path("leaderboard.csv"), *winner.files]
print("wrote", *written, sep="\n  ")
assert list(board[rank_by]) == sorted(board[rank_by]), "the leaderboard is not sorted by its score"
assert board.loc[winner.candidate, "deployable"], "the winner is not a deployable model"
deployable = board[board["deployable"]]
assert row[rank_by] == deployable[rank_by].min()
assert all(p.is_file() for p in written)
