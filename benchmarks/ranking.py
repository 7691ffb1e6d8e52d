"""Retrieval ranks for galleries too big for a dense similarity matrix (`training.evaluation` holds them).

`rank_of_targets` gives the same numbers as the `video_text_retrieval` metric module on
`text_embeds @ video_embeds.T` (cosine similarity), but only ever holds `chunk_size` rows of it.
"""

from training.evaluation import RECALL_KS, rank_metrics, rank_of_targets, target_ranks

__all__ = ["RECALL_KS", "rank_metrics", "rank_of_targets", "target_ranks"]
