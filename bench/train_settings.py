"""Settings shared by bench/train.py's workers and its report: the official per-dataset settings,
the features each dataset gets, and the targets."""
from __future__ import annotations

from typing import Dict

IMAGE_DIM, TEXT_DIM = 4096, 384
FEATURE_SEED = 2025

# Official per-dataset settings (README of MrShouxingMa/REARM; the rest are parser.py defaults).
OFFICIAL_SETTINGS: Dict[str, dict] = {
    "baby": dict(n_layers=4, reg_weight=5e-4, rank=3, s_drop=0.4, m_drop=0.6, u_mm_image_weight=0.2,
                 i_mm_image_weight=0.0, uu_co_weight=0.4, ii_co_weight=0.2, user_knn_k=40, item_knn_k=10,
                 n_ii_layers=1, n_uu_layers=1, cl_tmp=0.6, cl_loss_weight=5e-6, diff_loss_weight=5e-5),
    "sports": dict(n_layers=5, reg_weight=0.05, rank=7, s_drop=1.0, m_drop=0.2, u_mm_image_weight=0.0,
                   i_mm_image_weight=0.2, uu_co_weight=0.9, ii_co_weight=0.2, user_knn_k=25, item_knn_k=5,
                   n_ii_layers=2, n_uu_layers=2, cl_tmp=1.5, cl_loss_weight=1e-3, diff_loss_weight=5e-4),
    "clothing": dict(n_layers=4, reg_weight=1e-5, rank=3, s_drop=0.4, m_drop=0.1, u_mm_image_weight=0.1,
                     i_mm_image_weight=0.1, uu_co_weight=0.7, ii_co_weight=0.1, user_knn_k=45,
                     item_knn_k=10, n_ii_layers=1, n_uu_layers=1, cl_tmp=0.03, cl_loss_weight=1e-6,
                     diff_loss_weight=1e-5),
}
# TikTok: neither the official README nor our presets have settings for it; our model falls back to
# the Baby preset there, so both sides run the Baby settings.
OFFICIAL_SETTINGS["tiktok"] = dict(OFFICIAL_SETTINGS["baby"])
#: datasets measured with their own feature files (vision slot, text slot) instead of random ones
REAL_FEATURES = {"tiktok": ("image_feat.npy", "audio_feat.npy")}
OFFICIAL_COMMON = dict(embedding_dim=64, learning_rate=5e-5, batch_size=2048, eval_batch_size=8192,
                       seed=2025, topk=[10, 20], metrics=["Precision", "Recall", "NDCG"],
                       valid_metric="Recall@20", user_aggr_mode="softmax")
TARGETS = {"epoch": 0.5, "evaluation": 0.3, "peak_rss": 0.5}
#: on a GPU (--device cuda): epoch and peak GPU memory (torch.cuda.max_memory_allocated)
GPU_TARGETS = {"epoch": 0.5, "peak_gpu": 0.5}
# Keys of MMRec's config recorded for ours (whatever our REARM.yaml / preset sets).
OUR_CONFIG_KEYS = ("embedding_size", "learning_rate", "learner", "weight_decay", "weight_decay_mode",
                   "train_batch_size", "eval_batch_size", "seed", "attention", "train_raw_features",
                   "meta_input_grad", "ablation", "modalities", "cooc_padding", "cooc_empty", "knn_self")
