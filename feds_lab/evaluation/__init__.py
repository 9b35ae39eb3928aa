"""Rate-distortion evaluation: real bitstreams, quality metrics, classical anchors, BD-rate.

- :mod:`.metrics`: PSNR and MS-SSIM on 8-bit RGB, MS-SSIM in dB.
- :mod:`.results`: the results files (CompressAI's JSON): one schema for every RD curve.
- :mod:`.evaluate`: code images with a model or checkpoints, into results.
- :mod:`.cache`: the evaluation cache (by checkpoint, images, settings and code).
- :mod:`.curves`: checkpoints into RD curves, through the cache.
- :mod:`.anchors`: JPEG, WebP, AVIF and JPEG 2000 through Pillow, in the same results format.
- :mod:`.bdrate`: BD-rate and BD-PSNR (PCHIP or cubic), bootstrap intervals over images (and over seeds),
  and the table rows of pairs of results files.
- :mod:`.seeds`, :mod:`.learning_curve`, then :mod:`.rd_analysis`: a pipeline run's comparisons (notebook 04).
- :mod:`.cli`: the ``eval``, ``anchors`` and ``bdrate`` subcommands.
"""

from .anchors import CODECS, available_codecs, evaluate_codec, run_anchors
from .bdrate import BDRateError, BootstrapResult, bd_psnr, bd_quality, bd_rate, bootstrap_bd, bootstrap_bd_pooled
from .curves import evaluate_checkpoints
from .evaluate import evaluate_model, likelihood_bpp
from .metrics import ms_ssim, ms_ssim_db, psnr
from .results import ResultsError, load_results, make_results, paired_per_image, rd_curve, save_results

__all__ = [
    "CODECS", "BDRateError", "BootstrapResult", "ResultsError",
    "available_codecs", "bd_psnr", "bd_quality", "bd_rate", "bootstrap_bd", "bootstrap_bd_pooled",
    "evaluate_checkpoints",
    "evaluate_codec", "evaluate_model", "likelihood_bpp", "load_results", "make_results", "ms_ssim",
    "ms_ssim_db", "paired_per_image", "psnr", "rd_curve", "run_anchors", "save_results",
]
