"""CTAL model: backbone, pre-training heads, fine-tuning fusion and task heads.

    from ctal_ds.model import CTALConfig, CTALForPretraining
    model = CTALForPretraining(CTALConfig.preset("base"))
    out = model(batch)            # batch as in docs/contracts.md
    out["loss"].backward()

    model = CTALModel.from_pretrained("runs/base/export")        # any model directory
    out = model.embed(audio="utt.wav", text="the transcript")     # CTALProcessor inside
"""

from ctal_ds.model.attention import MultiHeadAttention, eager_attention, sdpa_attention
from ctal_ds.model.config import CTALConfig, count_parameters, estimate_parameters
from ctal_ds.model.ctal import CTALModel, CTALOutput
from ctal_ds.model.encoders import TextEncoder, TextReferredAudioEncoder
from ctal_ds.model.fusion import CTALFusion, orthogonal_loss
from ctal_ds.model.inference import embed, encode
from ctal_ds.model.layers import TextEncoderLayer, TextReferredAudioLayer
from ctal_ds.model.pretrained import PretrainedModel, load_pretrained
from ctal_ds.model.pretraining import CTALForPretraining
from ctal_ds.model.processor import CTALProcessor
from ctal_ds.model.tasks import CTALForSequenceTask, SequenceTaskConfig

__all__ = [
    "CTALConfig",
    "CTALForPretraining",
    "CTALForSequenceTask",
    "CTALFusion",
    "CTALModel",
    "CTALOutput",
    "CTALProcessor",
    "MultiHeadAttention",
    "PretrainedModel",
    "SequenceTaskConfig",
    "TextEncoder",
    "TextEncoderLayer",
    "TextReferredAudioEncoder",
    "TextReferredAudioLayer",
    "count_parameters",
    "eager_attention",
    "embed",
    "encode",
    "estimate_parameters",
    "load_pretrained",
    "orthogonal_loss",
    "sdpa_attention",
]
