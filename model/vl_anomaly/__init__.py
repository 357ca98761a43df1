"""vl_anomaly: the ROS-free core of vl-anomaly (road anomaly segmentation).

Public API::

    from vl_anomaly import create_predictor, read_image
    predictor = create_predictor("espnetv2_s2.0_cityscapes", score="msp")
    prediction = predictor.predict(read_image("frame.png"))   # .score_map (H, W) float32, .obstacles, …
"""

__version__ = "0.1.0"

from .errors import ConfigError, InvalidImageError, VLAnomalyError, WeightsError  # noqa: E402
from .defaults import DEFAULT_MODEL, DEFAULT_SCORE  # noqa: E402
from .factory import create_model, create_predictor, get_preprocess_cfg  # noqa: E402
from .io import read_image  # noqa: E402
from .outputs import SegmenterOutput, VLOutput  # noqa: E402
from .pipeline import AnomalyPredictor, Prediction  # noqa: E402
from .postprocess import Obstacle, PostprocessCfg  # noqa: E402
from .preprocess import PreprocessCfg, validate_image  # noqa: E402
from .pretrained import get_pretrained_cfg, list_pretrained  # noqa: E402
from .registry import add_model_config, get_model_config, list_models  # noqa: E402
from .scores import ScoringCfg, compute_score, list_scores  # noqa: E402

__all__ = [
    "AnomalyPredictor", "ConfigError", "DEFAULT_MODEL", "DEFAULT_SCORE", "InvalidImageError", "Obstacle",
    "PostprocessCfg", "Prediction", "PreprocessCfg", "ScoringCfg", "SegmenterOutput", "VLAnomalyError", "VLOutput",
    "WeightsError", "add_model_config",
    "compute_score", "create_model", "create_predictor", "get_model_config", "get_pretrained_cfg",
    "get_preprocess_cfg", "list_models", "list_pretrained", "list_scores", "read_image", "validate_image",
]
