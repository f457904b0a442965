"""LoRA training of an SD-architecture UNet with diffusers + peft: `python -m loraforge_worker.train_diffusers <config.json>`.

The trainer of the `diffusers` engine (see engines/diffusers_lora.py for the config it reads).
It behaves like AI-Toolkit where the worker relies on it:

- the same files: `<output_dir>/<name>_<step:09d>.safetensors` every `save_every` steps, the final
  `<name>.safetensors`, `optimizer.pt`, samples moved complete into `samples/<ms>__<step:09d>_<i>.jpg`;
  every file is written under a hidden temporary name and renamed, so a kill never leaves half a file
  under a real name;
- `training_info` metadata (`{"step", "epoch"}`) in every LoRA file, which the worker checks;
- the same console lines (tqdm bar named after the run on stderr, `Saved checkpoint to …`,
  `Error running job: …`, `Job stopped` after SIGINT with exit code 0);
- resume: the newest `<name>*.safetensors` in the output folder is loaded, its step read from the
  metadata, and `optimizer.pt` (optimizer + LR scheduler state) restored when it belongs to that step.

Batches, noise, timesteps and caption dropout come from a generator seeded by (seed, step), so a run
resumed from a checkpoint continues exactly as the uninterrupted run would have.

The saved LoRA is in diffusers' format (`unet.…lora.down/up.weight` + `lora_adapter_metadata`):
`StableDiffusionPipeline.load_lora_weights` loads it. A fixed-noise evaluation loss (same latents,
noise and timesteps) is computed before and after training and stored as `loraforge_eval`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
EVAL_SEED = 20240601
EVAL_ITEMS = 8
MAX_CONSECUTIVE_OOM = 3


class Trainer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.c = config
        self.name: str = config["name"]
        self.out = Path(config["output_dir"])
        self.samples_dir = self.out / "samples"
        self.total: int = int(config["steps"])

    # -- setup -------------------------------------------------------------------------------------
    def _base_dir(self) -> str:
        base = self.c["base_model"]
        if "tiny_sd" in base:
            from loraforge_worker.engines.tiny_sd import ensure_tiny_sd

            return str(ensure_tiny_sd(base["tiny_sd"], Path(base["cache_root"])))
        return str(base["name_or_path"])

    def setup(self) -> None:
        import torch

        threads = int(self.c.get("torch_threads") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTokenizer

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
        self.weight_dtype = dtypes.get(self.c.get("dtype", "fp32"), torch.float32) if self.device.type == "cuda" else torch.float32
        base = self._base_dir()
        self.base_dir = base
        print(f"Loading model from {base}", flush=True)
        self.tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
        self.text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder").to(self.device, self.weight_dtype)
        self.vae = AutoencoderKL.from_pretrained(base, subfolder="vae").to(self.device, self.weight_dtype)
        self.unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet").to(self.device, self.weight_dtype)
        self.noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
        for module in (self.text_encoder, self.vae, self.unet):
            module.requires_grad_(False)
        self._load_dataset()
        rank, alpha = int(self.c["rank"]), int(self.c["alpha"])
        print(f"create LoRA network. base dim (rank): {rank}, alpha: {alpha}", flush=True)
        self.lora_config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=self.c.get("init_lora_weights", "gaussian"),
                                      target_modules=list(self.c["target_modules"]))
        torch.manual_seed(int(self.c["seed"]))
        self.unet.add_adapter(self.lora_config)
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        for p in self.params:
            p.data = p.data.float()
        self.optimizer = self._make_optimizer()
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(self.c["lr_scheduler"], optimizer=self.optimizer,
                                          num_warmup_steps=max(1, self.total // 20) if "warmup" in self.c["lr_scheduler"] else 0,
                                          num_training_steps=self.total)

    def _make_optimizer(self) -> Any:
        torch, lr, name = self.torch, float(self.c["learning_rate"]), self.c["optimizer"]
        if name == "adamw8bit":
            try:
                import bitsandbytes as bnb  # type: ignore[import-not-found]

                if self.device.type == "cuda":
                    return bnb.optim.AdamW8bit(self.params, lr=lr)
            except ImportError:
                pass
            print("adamw8bit needs bitsandbytes on a CUDA device; using adamw", flush=True)
            return torch.optim.AdamW(self.params, lr=lr)
        if name == "adafactor":
            from transformers.optimization import Adafactor

            return Adafactor(self.params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
        if name == "prodigy":
            from prodigyopt import Prodigy  # type: ignore[import-not-found]

            return Prodigy(self.params, lr=lr)
        return torch.optim.AdamW(self.params, lr=lr)

    def _load_dataset(self) -> None:
        from PIL import Image, ImageOps

        torch = self.torch
        folder = Path(self.c["dataset_dir"])
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        print(f"Dataset: {folder}", flush=True)
        print(f"  -  Found {len(images)} images", flush=True)
        if not images:
            raise RuntimeError(f"no images found in {folder}")
        res = int(self.c["resolution"])
        pixels, captions = [], []
        for path in images:
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img).convert("RGB")
                scale = res / min(img.size)
                img = img.resize((max(res, round(img.width * scale)), max(res, round(img.height * scale))), Image.Resampling.LANCZOS)
                left, top = (img.width - res) // 2, (img.height - res) // 2
                img = img.crop((left, top, left + res, top + res))
                data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(res, res, 3)
            pixels.append(data.permute(2, 0, 1).float() / 127.5 - 1.0)
            caption_file = path.with_suffix(".txt")
            captions.append(caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else "")
        with torch.no_grad():
            latents = []
            for i in range(0, len(pixels), 4):
                batch = torch.stack(pixels[i:i + 4]).to(self.device, self.weight_dtype)
                latents.append(self.vae.encode(batch).latent_dist.mode() * self.vae.config.scaling_factor)
            self.latents = torch.cat(latents).float()
            self.embeddings = self._encode(captions)
            self.empty_embedding = self._encode([""])[0]
        print(f"Caching latents for {folder}", flush=True)

    def _encode(self, texts: list[str]) -> Any:
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0].float()

    # -- training ---------------------------------------------------------------------------------
    def _loss(self, latents: Any, embeddings: Any, noise: Any, timesteps: Any) -> Any:
        torch = self.torch
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(self.device.type, dtype=self.weight_dtype, enabled=self.weight_dtype != torch.float32):
            pred = self.unet(noisy.to(self.weight_dtype), timesteps, encoder_hidden_states=embeddings.to(self.weight_dtype)).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return torch.nn.functional.mse_loss(pred.float(), target.float())

    def _train_step(self, step: int) -> float:
        torch = self.torch
        gen = torch.Generator().manual_seed(int(self.c["seed"]) * 1_000_003 + step)
        n, batch = self.latents.shape[0], int(self.c["batch_size"])
        accumulation = int(self.c.get("gradient_accumulation", 1))
        dropout = float(self.c.get("caption_dropout_rate", 0.0))
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(accumulation):
            idx = torch.randperm(n, generator=gen)[:batch] if batch <= n else torch.randint(0, n, (batch,), generator=gen)
            latents = self.latents[idx].to(self.device)
            embeddings = self.embeddings[idx]
            drop = torch.rand(len(idx), generator=gen) < dropout
            if drop.any():
                embeddings = torch.where(drop.to(self.device)[:, None, None], self.empty_embedding, embeddings)
            noise = torch.randn(latents.shape, generator=gen).to(self.device)
            timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(idx),), generator=gen).to(self.device)
            loss = self._loss(latents, embeddings, noise, timesteps) / accumulation
            loss.backward()
            total += float(loss.item())
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.lr_scheduler.step()
        return total

    def eval_loss(self) -> float:
        """MSE on fixed latents, noise and timesteps: comparable before and after training."""
        torch = self.torch
        gen = torch.Generator().manual_seed(EVAL_SEED)
        count = min(EVAL_ITEMS, self.latents.shape[0])
        latents = self.latents[:count].to(self.device)
        noise = torch.randn(latents.shape, generator=gen).to(self.device)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.linspace(steps * 0.1, steps * 0.9, count).long().to(self.device)
        was_training = self.unet.training
        self.unet.eval()
        with torch.no_grad():
            value = float(self._loss(latents, self.embeddings[:count], noise, timesteps).item())
        self.unet.train(was_training)
        return value

    def run(self) -> None:
        from tqdm import tqdm

        self.setup()
        self.out.mkdir(parents=True, exist_ok=True)
        start = self._resume()
        eval_before = self.eval_loss()
        print(f"Eval loss (fixed noise) at step {start}: {eval_before:.6f}", flush=True)
        save_every, sample_every = int(self.c["save_every"]), int(self.c.get("sample_every") or 0)
        prompts = self.c["sample"]["prompts"]
        self.unet.train()
        bar = tqdm(total=self.total, initial=start, desc=self.name, file=sys.stderr, mininterval=0, leave=True)
        consecutive_oom = 0
        loss = float("nan")
        for step in range(start, self.total):
            try:
                loss = self._train_step(step)
                consecutive_oom = 0
            except self.torch.OutOfMemoryError:
                consecutive_oom += 1
                self.optimizer.zero_grad(set_to_none=True)
                if consecutive_oom > MAX_CONSECUTIVE_OOM:
                    raise RuntimeError(f"OOM during training step {MAX_CONSECUTIVE_OOM} times in a row, aborting training") from None
                print("#" * 60 + f"\n# OOM during training step, skipping batch {consecutive_oom}/{MAX_CONSECUTIVE_OOM} #\n" + "#" * 60, flush=True)
                if self.device.type == "cuda":
                    self.torch.cuda.empty_cache()
                continue
            lr = self.optimizer.param_groups[0]["lr"]
            bar.set_postfix_str(f"lr: {lr:.1e} loss: {loss:.3e}", refresh=False)
            bar.update(1)
            done = step + 1
            if done < self.total and done % save_every == 0:
                self.save(done)
            if done < self.total and prompts and sample_every and done % sample_every == 0:
                self.sample(done)
        bar.close()
        eval_after = self.eval_loss()
        print(f"Eval loss (fixed noise) at step {self.total}: {eval_after:.6f}", flush=True)
        self.save(self.total, final=True, extra={"loraforge_eval": json.dumps(
            {"before": eval_before, "after": eval_after, "from_step": start, "to_step": self.total, "last_step_loss": loss})})
        if prompts:
            self.sample(self.total)

    # -- files ------------------------------------------------------------------------------------
    def _metadata(self, step: int, extra: dict[str, str] | None) -> dict[str, str]:
        config = self.lora_config.to_dict()
        for key, value in config.items():
            if isinstance(value, set):
                config[key] = sorted(value)
        adapter = {f"unet.{k}": v for k, v in config.items()}
        epoch = (step * int(self.c["batch_size"]) * int(self.c.get("gradient_accumulation", 1))) // max(1, self.latents.shape[0])
        meta = {
            "format": "pt",
            "lora_adapter_metadata": json.dumps(adapter, sort_keys=True, default=str),
            "training_info": json.dumps({"step": step, "epoch": epoch}),
            "ss_output_name": self.name,
            "software": json.dumps({"name": "loraforge-diffusers", "version": "1"}),
        }
        meta.update({k: str(v) for k, v in (self.c.get("meta") or {}).items()})
        if self.c.get("trigger_word"):
            meta["ss_tag_frequency"] = json.dumps({"trigger": {self.c["trigger_word"]: 1}})
        meta.update(extra or {})
        return meta

    def lora_state_dict(self) -> dict[str, Any]:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))
        return {f"unet.{k}": v.detach().to("cpu", self.torch.float32).contiguous() for k, v in state.items()}

    def save(self, step: int, final: bool = False, extra: dict[str, str] | None = None) -> None:
        from safetensors.torch import save_file

        path = self.out / (f"{self.name}.safetensors" if final else f"{self.name}_{step:09d}.safetensors")
        if not final:
            print(f"\nSaving at step {step}", flush=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(self.lora_state_dict(), str(tmp), metadata=self._metadata(step, extra))
        os.replace(tmp, path)
        print(f"Saved checkpoint to {path}", flush=True)
        optimizer_path = self.out / "optimizer.pt"
        tmp = optimizer_path.with_name(".optimizer.pt.tmp")
        self.torch.save({"step": step, "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict()}, tmp)
        os.replace(tmp, optimizer_path)
        print(f"Saved optimizer to {optimizer_path}", flush=True)
        if not final:
            self._prune()

    def _prune(self) -> None:
        keep = int(self.c.get("max_step_saves_to_keep") or 0)
        if keep <= 0:
            return
        saves = sorted(self.out.glob(f"{self.name}_[0-9]*.safetensors"))
        for old in saves[:-keep]:
            print(f"Removing old save: {old}", flush=True)
            old.unlink(missing_ok=True)

    def _resume(self) -> int:
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft.utils import set_peft_model_state_dict
        from safetensors import safe_open
        from safetensors.torch import load_file

        candidates = [p for p in self.out.glob(f"{self.name}*.safetensors") if not p.name.startswith(".")]
        if not candidates:
            return 0
        latest = max(candidates, key=lambda p: p.stat().st_ctime)
        print(f"#### IMPORTANT RESUMING FROM {latest} ####", flush=True)
        print(f"Loading from {latest}", flush=True)
        with safe_open(str(latest), framework="pt") as fh:
            meta = fh.metadata() or {}
        step = int(json.loads(meta.get("training_info", "{}")).get("step", 0))
        state = {k.removeprefix("unet."): v for k, v in load_file(str(latest)).items() if k.startswith("unet.")}
        result = set_peft_model_state_dict(self.unet, convert_unet_state_dict_to_peft(state), adapter_name="default")
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise RuntimeError(f"checkpoint {latest.name} does not fit this model (unexpected keys: {unexpected[:3]})")
        for p in self.params:
            p.data = p.data.float()
        print(f"Found step {step} in metadata, starting from there", flush=True)
        optimizer_path = self.out / "optimizer.pt"
        if optimizer_path.is_file():
            saved = self.torch.load(optimizer_path, map_location="cpu")
            if int(saved.get("step", -1)) == step:
                print(f"Loading optimizer state from {optimizer_path}", flush=True)
                self.optimizer.load_state_dict(saved["optimizer"])
                self.lr_scheduler.load_state_dict(saved["lr_scheduler"])
                print("Updating optimizer LR from params", flush=True)
            else:
                print(f"Optimizer state in {optimizer_path} is from step {saved.get('step')}, not {step}: starting a fresh optimizer",
                      flush=True)
        return min(step, self.total)

    def _pipeline(self) -> Any:
        if getattr(self, "_pipe", None) is None:
            from diffusers import DDIMScheduler, StableDiffusionPipeline

            self._pipe = StableDiffusionPipeline(
                vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                scheduler=DDIMScheduler.from_pretrained(self.base_dir, subfolder="scheduler"),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    def sample(self, step: int) -> None:
        torch, settings = self.torch, self.c["sample"]
        pipe = self._pipeline()
        tmp_dir = self.samples_dir / ".tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        was_training = self.unet.training
        self.unet.eval()
        stamp = int(time.time() * 1000)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.weight_dtype, enabled=self.weight_dtype != torch.float32):
            for i, prompt in enumerate(settings["prompts"]):
                generator = torch.Generator(device="cpu").manual_seed(int(settings["seed"]) + i)
                image = pipe(prompt, negative_prompt=settings.get("neg") or None, height=int(settings["height"]),
                             width=int(settings["width"]), num_inference_steps=int(settings["sample_steps"]),
                             guidance_scale=float(settings["guidance_scale"]), generator=generator).images[0]
                name = f"{stamp}__{step:09d}_{i}.jpg"
                image.save(tmp_dir / name, quality=95)
                os.replace(tmp_dir / name, self.samples_dir / name)
        self.unet.train(was_training)


def main(argv: list[str] | None = None) -> int:
    # Default SIGINT behaviour (KeyboardInterrupt) whatever the parent left us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loraforge_worker.train_diffusers <config.json>", file=sys.stderr)
        return 2
    config = json.loads(Path(args[0]).read_text())
    print("Running 1 job", flush=True)
    print(json.dumps(config, indent=2), flush=True)
    print("#" * 46 + f"\n# Running job: {config['name']}\n" + "#" * 46, flush=True)
    try:
        Trainer(config).run()
    except KeyboardInterrupt:
        print("\n" + "=" * 40 + "\nJob stopped\n" + "=" * 40, flush=True)
        return 0
    except Exception as exc:  # noqa: BLE001 - reported the way AI-Toolkit does, then exit 1
        print(f"Error running job: {exc}", flush=True)
        traceback.print_exc()
        print("Result:\n - 0 completed jobs\n - 1 failure", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
