# Configuration of a dms-retrofit export, for transformers' trust_remote_code=True.
# Written for dms-retrofit (not derived from other code). The export's config.json keeps the
# base family's model_type (llama, qwen2, qwen3, mistral), so that loading without remote
# code gives the plain base model; with remote code this class carries the same fields plus
# every dms_* field of the official DMS configuration.
from transformers import PretrainedConfig

# The official DMS configuration's defaults, for fields an export leaves out.
DMS_DEFAULTS = {
    "dms_alpha_scale": 100.0,
    "dms_initial_alpha_offset": 5.0,
    "dms_window_size": 512,
    "dms_paged_attention_block_size": 256,
    "dms_cr": 8,
    "dms_disable_eviction": False,
    "dms_separate_alpha": False,
    "dms_alpha_per": "head",
    "dms_tau": 0.1,
}


class DmsConfig(PretrainedConfig):
    model_type = "dms_retrofit"

    def __init__(self, **kwargs):
        for key, value in DMS_DEFAULTS.items():
            kwargs.setdefault(key, value)
        if kwargs["dms_alpha_per"] not in ("head", "layer"):
            raise ValueError("dms_alpha_per must be 'head' or 'layer'")
        super().__init__(**kwargs)
