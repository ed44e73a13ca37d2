"""The SDXL mode of the kohya benchmark (bench/run_bench.py --family sdxl), without kohya or a WebUI:
the command lines both tools get, the OpenCLIP bigG tokenizer bench/prepare.py writes for kohya, and
the result tables."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SDXL_CKPT = Path("/models/random-sdxl.safetensors")


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rb():
    return _load("run_bench")


@pytest.fixture(scope="module")
def prepare():
    return _load("prepare")


def _value(cmd: list[str], flag: str) -> str:
    assert cmd.count(flag) == 1, (flag, cmd)
    return cmd[cmd.index(flag) + 1]


# ------------------------------------------------------------------------------------------
# the plan and the command lines
# ------------------------------------------------------------------------------------------
def test_sdxl_defaults_are_the_issues_settings(rb):
    family, configs, reps = rb.plan(rb.build_parser().parse_args(["--family", "sdxl", "--checkpoint", str(SDXL_CKPT)]))
    assert family.name == "sdxl" and reps == 2
    assert [(c.resolution, c.grad_ckpt, c.steps) for c in configs] == [(128, True, 10)]
    assert all(c.checkpoint == SDXL_CKPT and c.unet_only for c in configs)

    _, configs, reps = rb.plan(rb.build_parser().parse_args(
        ["--family", "sdxl", "--checkpoint", str(SDXL_CKPT), "--resolutions", "128", "256", "--reps", "2"]))
    assert [c.label for c in configs] == ["SDXL 128px gc=on", "SDXL 256px gc=on"]
    assert [c.key for c in configs] == ["sdxl_128_gc1", "sdxl_256_gc1"]


def test_sd15_plan_and_labels_are_unchanged(rb):
    family, configs, reps = rb.plan(rb.build_parser().parse_args([]))
    assert family.name == "sd1" and reps == 2 and family.kohya_script == "train_network.py"
    assert [(c.key, c.label, c.steps) for c in configs] == [
        ("128_gc0", "128px gc=off", 20), ("128_gc1", "128px gc=on", 20),
        ("256_gc0", "256px gc=off", 20), ("256_gc1", "256px gc=on", 20)]
    assert all(c.checkpoint == rb.CHECKPOINT.resolve() and not c.unet_only for c in configs)


def test_ours_sdxl_command_is_unet_only_fp32_cpu_with_checkpointing(rb, tmp_path):
    cfg = rb.Config(128, True, 10, "sdxl", SDXL_CKPT)
    cmd = rb.ours_command("py", cfg, tmp_path, "run")
    assert cmd[:4] == ["py", "-m", "lib_training", "train"]
    assert _value(cmd, "--checkpoint") == str(SDXL_CKPT)
    assert _value(cmd, "--steps") == "10" and _value(cmd, "--resolution") == "128"
    assert _value(cmd, "--mixed-precision") == "no" and _value(cmd, "--device") == "cpu"
    assert "--unet-only" in cmd and "--gradient-checkpointing" in cmd and "--te-lr" not in cmd
    # the same rank/alpha/lr/optimizer/seed as the SD1.5 bench
    sd1 = rb.ours_command("py", rb.Config(128, True, 20), tmp_path, "run")
    for flag in ("--rank", "--alpha", "--optimizer", "--lr", "--scheduler", "--warmup-steps", "--batch-size",
                 "--seed", "--save-every", "--data"):
        assert _value(cmd, flag) == _value(sd1, flag), flag
    # every flag is one our CLI knows, with the meaning the bench wants
    from lib_training.cli import build_parser

    args = build_parser().parse_args(cmd[3:])
    assert args.unet_only and args.gradient_checkpointing and args.mixed_precision == "no" and args.te_lr is None


def test_kohya_sdxl_command(rb, tmp_path):
    cfg = rb.Config(256, True, 10, "sdxl", SDXL_CKPT)
    kdir = Path("/kohya")
    cmd = rb.kohya_command("kpy", kdir, cfg, tmp_path, "run")
    assert cmd[:2] == ["kpy", str(kdir / "sdxl_train_network.py")]
    assert _value(cmd, "--pretrained_model_name_or_path") == str(SDXL_CKPT)
    assert _value(cmd, "--max_train_steps") == "10" and _value(cmd, "--resolution") == "256,256"
    assert _value(cmd, "--mixed_precision") == "no" and _value(cmd, "--max_data_loader_n_workers") == "0"
    assert _value(cmd, "--tokenizer_cache_dir") == str(rb.KOHYA_TOKENIZERS)
    for switch in ("--network_train_unet_only", "--gradient_checkpointing", "--sdpa", "--cache_latents"):
        assert switch in cmd, switch
    assert "--cache_text_encoder_outputs" not in cmd  # see bench/README.md, SDXL
    sd1 = rb.kohya_command("kpy", kdir, rb.Config(256, True, 20), tmp_path, "run")
    assert sd1[1] == str(kdir / "train_network.py") and "--network_train_unet_only" not in sd1
    for flag in ("--network_dim", "--network_alpha", "--optimizer_type", "--learning_rate", "--lr_scheduler",
                 "--train_batch_size", "--seed", "--save_precision", "--network_module", "--train_data_dir"):
        assert _value(cmd, flag) == _value(sd1, flag), flag


def test_webui_request_for_sdxl_trains_the_unet_only(rb):
    body = rb.webui_request(rb.Config(128, True, 10, "sdxl", SDXL_CKPT), "webui_sdxl")
    assert body["network"]["train_text_encoder"] is False and body["optimizer"]["text_encoder_lr"] == 0.0
    assert body["train"]["gradient_checkpointing"] is True and body["train"]["max_steps"] == 10
    assert body["train"]["mixed_precision"] == "no" and body["data"]["resolution"] == 128
    sd1 = rb.webui_request(rb.Config(128, True, 20), "webui_sd1")
    assert sd1["network"]["train_text_encoder"] is True and sd1["optimizer"]["text_encoder_lr"] == rb.LR


def test_webui_request_and_cli_flags_give_the_same_training_settings(rb, tmp_path):
    """The WebUI case posts what the CLI run gets: the same settings once both are parsed (the
    WebUI's own request parser against the CLI's), but for what the WebUI decides itself."""
    from lib_training.cli import build_parser, config_from_args
    from lib_training.webui.train.form import config_from_request

    cfg = rb.Config(128, True, 10, "sdxl", SDXL_CKPT)
    cli = config_from_args(build_parser().parse_args(rb.ours_command("py", cfg, tmp_path, "run")[3:]))
    webui = config_from_request(rb.webui_request(cfg, "run"), tmp_path / "Lora", tmp_path / "runs").config
    # unused with these settings: the text-encoder lr (no text-encoder LoRA), restarts (constant schedule)
    unused = {"text_encoder_lr", "restarts"}
    for section in ("network", "optimizer", "train"):
        a, b = vars(getattr(cli, section)), vars(getattr(webui, section))
        differ = {k: (a[k], b[k]) for k in a if a[k] != b[k] and k not in unused}
        assert not differ, (section, differ)
    assert cli.data.resolution == webui.data.resolution == 128
    assert cli.data.cache_latents and webui.data.cache_latents
    assert not cli.network.train_text_encoder and cli.train.gradient_checkpointing


# ------------------------------------------------------------------------------------------
# kohya's tokenizers, offline
# ------------------------------------------------------------------------------------------
def _open_clip_tokenize():
    """open_clip's own tokenizer (tokenizer.py, loaded alone: the package's __init__ needs torchvision,
    which one test environment lacks)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip is not installed (tests/setup_envs.sh installs it)")
    if importlib.util.find_spec("ftfy") is None:
        # open_clip imports ftfy for fix_text, the identity on the plain ASCII captions used here
        sys.modules.setdefault("ftfy", types.SimpleNamespace(fix_text=lambda text: text))
    path = Path(spec.submodule_search_locations[0]) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.tokenize


CAPTIONS = ["sks photo, a tabby cat looking to the side", "a photo of a cat",
            "A Rocket on the launch pad, against a BLUE sky.", "sks photo"]


def test_prepare_writes_both_tokenizers_in_kohyas_cache_layout(prepare, tmp_path):
    from transformers import CLIPTokenizer

    assert prepare.write_kohya_tokenizer(tmp_path) == tmp_path
    bigg = tmp_path / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"
    clip_l = tmp_path / "openai_clip-vit-large-patch14"
    for folder in (bigg, clip_l):
        assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    tokenizer = CLIPTokenizer.from_pretrained(str(bigg))
    assert tokenizer.pad_token == "!" and tokenizer.pad_token_id == 0 and tokenizer.model_max_length == 77
    assert tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == 49407 and len(tokenizer) == 49408
    assert tokenizer.unk_token == "<|endoftext|>"
    clip = CLIPTokenizer.from_pretrained(str(clip_l))
    assert clip.pad_token_id == 49407 and clip.model_max_length == 77
    # idempotent: a complete folder is left alone
    stamp = (bigg / "vocab.json").stat().st_mtime_ns
    prepare.write_kohya_tokenizer(tmp_path)
    assert (bigg / "vocab.json").stat().st_mtime_ns == stamp


def test_bigg_tokenizer_gives_open_clips_ids(prepare, tmp_path):
    """kohya tokenizes SDXL's second encoder with CLIPTokenizer(padding="max_length", 77) and pad id 0;
    open_clip's tokenizer (what OpenCLIP bigG was trained with) pads with 0 too."""
    from transformers import CLIPTokenizer

    tokenize = _open_clip_tokenize()
    folder = prepare.write_bigg_tokenizer(tmp_path / "bigg")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    captions = CAPTIONS + [f"sks photo, {caption}" for caption in prepare.PHOTOS.values()]
    ours = tokenizer(captions, padding="max_length", max_length=77, truncation=True).input_ids
    theirs = tokenize(captions).tolist()
    assert ours == theirs
    assert ours[1][:8] == [49406, 320, 1125, 539, 320, 2368, 49407, 0]


# ------------------------------------------------------------------------------------------
# result tables
# ------------------------------------------------------------------------------------------
def _run(rb, tool: str, cfg, rep: int, first: float, step: float, rss: float, keys: list[str]):
    r = rb.RunResult(tool=tool, config=cfg.key, rep=rep, returncode=0, wall_s=first + 10 * step,
                     first_step_s=first, loop_start_s=first - step)
    r.step_times_s = [step] * cfg.steps
    r.steady_step_s, r.peak_rss_mb, r.lora_bytes, r.lora_tensor_bytes, r.lora_keys = step, rss, 1000, 900, keys
    return r


def _results(rb):
    configs = [rb.Config(128, True, 10, "sdxl", SDXL_CKPT), rb.Config(256, True, 10, "sdxl", SDXL_CKPT)]
    keys = ["lora_unet_input_blocks_4_1_proj_in.lora_down.weight:F16:16x640"]
    results = []
    for cfg, scale in zip(configs, (1.0, 1.8)):
        for rep in range(2):
            results.append(_run(rb, "ours", cfg, rep, 37.0 + rep, 7.7 * scale, 20900.0, keys))
            results.append(_run(rb, "kohya", cfg, rep, 41.0 + rep, 9.7 * scale, 21600.0, keys))
    return configs, results


def test_sdxl_result_table(rb):
    configs, results = _results(rb)
    summary = rb.summarize(results, configs, None)
    assert list(summary) == ["sdxl_128_gc1", "sdxl_256_gc1"]
    meta = {"date": "2026-12-10T12:00:00", "machine": "x86_64, 2 CPUs", "reps": 2, "steps": 10,
            "command": "python bench/run_bench.py --family sdxl", "bench_minutes": 30.0, "noisy_reruns": 0,
            "family": "sdxl", "checkpoint": str(SDXL_CKPT), "kohya_commit": "48d368fa557731ad",
            "torch": {"ours": "2.14.1", "kohya": "2.14.1"}}
    table = rb.markdown(summary, None, meta)
    assert "UNet-only LoRA" in table and "UNet+TE" not in table
    assert "Model: SDXL, `random-sdxl.safetensors`; kohya: `sdxl_train_network.py` at 48d368fa" in table
    assert "torch: ours 2.14.1, kohya 2.14.1" in table
    assert "## SDXL 128px gc=on" in table and "## SDXL 256px gc=on" in table
    lines = table.splitlines()
    section = lines[lines.index("## SDXL 128px gc=on"):lines.index("## SDXL 256px gc=on")]
    assert "| start → step 1 done (s) | 37.5 | 41.5 | 0.90 (0.88–0.93) |" in section
    assert "| steady step (s, median, steps 3+) | 7.70 | 9.70 | 0.79 (0.79–0.79) |" in section
    assert "| peak RSS (MB) | 20900 | 21600 | 0.97 (0.97–0.97) |" in section
    assert "| same tensor names/dtypes/shapes | True | | |" in section
    assert ("Targets: steady step ≤ 0.9 × kohya; start → step 1 ≤ 1.0 × kohya; peak RSS ≤ 1.0 × kohya; "
            "identical LoRA size.") in table
    assert ("* SDXL 128px gc=on: steady step MET (0.79); start→step 1 MET (0.90); peak RSS MET (0.97); "
            "LoRA size identical (tensor bytes identical)") in table


def test_sd15_table_keeps_its_targets(rb):
    configs = [rb.Config(128, False, 20)]
    results = [_run(rb, "ours", configs[0], 0, 10.0, 2.0, 6874.0, ["k"]),
               _run(rb, "kohya", configs[0], 0, 12.0, 2.5, 6886.0, ["k"])]
    table = rb.markdown(rb.summarize(results, configs, None), None,
                        {"date": "d", "machine": "m", "reps": 1, "steps": 20, "command": "c", "bench_minutes": 1,
                         "noisy_reruns": 0})
    assert "UNet+TE LoRA" in table and "## 128px gc=off" in table and "peak RSS MET" not in table
    assert "Targets: steady step ≤ 0.9 × kohya; start → step 1 ≤ 1.0 × kohya; identical LoRA size." in table


def test_sdxl_webui_table_has_the_peak_rss_target_only(rb):
    configs, results = _results(rb)
    runs = []
    for cfg in configs:
        for rep in range(2):
            runs.append(types.SimpleNamespace(config=cfg.key, rep=rep, state="finished", first_step_s=20.0 + rep,
                                              steady_step_s=8.0, peak_rss_mb=15300.0, rss_before_mb=14800.0,
                                              lora_bytes=1000))
    summary = rb.summarize_webui(runs, results, configs)
    rows = summary["sdxl_128_gc1"]["metrics"]
    assert rows["peak_rss_mb"]["target"] == 1.0 and rows["first_step_s"]["target"] is None
    lines = rb.markdown_webui(summary)
    assert "### SDXL 128px gc=on" in lines
    assert ("| peak RSS of the whole process while training (MB) | 15300 | 21600 | 0.71 (0.71–0.71) "
            "| ≤ 1.0: MET |") in lines
    assert "| train request → step 1 done (s) | 20.5 | 41.5 | 0.49 (0.48–0.51) |  |" in lines
    assert "| RSS before the request (WebUI idle, model loaded; MB) | 14800 | – |  |  |" in lines
