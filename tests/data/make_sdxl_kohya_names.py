"""Regenerate sdxl_kohya_lora_names.json with kohya's own code (not part of the test run).

    git clone https://github.com/kohya-ss/sd-scripts /tmp/sd-scripts   # or any checkout
    python tests/data/make_sdxl_kohya_names.py /tmp/sd-scripts

Builds kohya's SDXL UNet and transformers' CLIP-L / bigG on the meta device (nothing allocated,
nothing downloaded) and records the LoRA module names networks/lora.py creates, with their
(in, out) sizes: the default network (attention only) and what conv_dim adds.
"""
import json
import subprocess
import sys
import types
from pathlib import Path

sd_scripts = Path(sys.argv[1]).resolve()
sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # library.utils imports it; unused here
sys.path.insert(0, str(sd_scripts))
import torch  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402
from library.sdxl_original_unet import SdxlUNet2DConditionModel  # noqa: E402
from networks import lora  # noqa: E402

common = dict(vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-05, pad_token_id=1, bos_token_id=0,
              eos_token_id=2)
with torch.device("meta"):
    unet = SdxlUNet2DConditionModel()
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                       num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768, **common))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                     num_attention_heads=20, hidden_act="gelu", projection_dim=1280,
                                                     **common))


def shapes(net):
    return {m.lora_name: [m.lora_down.weight.shape[1], m.lora_up.weight.shape[0]] for m in net.unet_loras}


default = lora.create_network(1.0, 16, 8, None, [te1, te2], unet)
conv = lora.create_network(1.0, 16, 8, None, [te1, te2], unet, conv_dim=4, conv_alpha=1)
commit = subprocess.run(["git", "-C", str(sd_scripts), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
out = {
    "source": f"kohya-ss/sd-scripts {commit.strip()} networks/lora.py create_network on "
              "library/sdxl_original_unet.SdxlUNet2DConditionModel + transformers CLIP-L / bigG (meta device); "
              "regenerate with tests/data/make_sdxl_kohya_names.py",
    "unet_default": shapes(default),
    "unet_conv_extra": {k: v for k, v in shapes(conv).items() if k not in shapes(default)},
    "text_encoders": [m.lora_name for m in default.text_encoder_loras],
}
lines = ["{", f'"source": {json.dumps(out["source"])},']
for key in ("unet_default", "unet_conv_extra"):  # one module a line, so a change reads as a small diff
    lines += [f'"{key}": {{', ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in out[key].items()), "},"]
lines += ['"text_encoders": [', ",\n".join(f"  {json.dumps(n)}" for n in out["text_encoders"]), "]", "}"]
Path(__file__).with_name("sdxl_kohya_lora_names.json").write_text("\n".join(lines) + "\n")
print({k: len(v) for k, v in out.items() if k != "source"})
