"""``robopolicy import-checkpoint``: convert another stack's checkpoint into a robopolicy policy.

robopolicy import-checkpoint lerobot PATH --out DIR [--overwrite]
"""

from __future__ import annotations

import argparse

HELP = """\
Convert a lerobot 0.4 DiffusionPolicy checkpoint directory (config.json, model.safetensors and
the policy_preprocessor / policy_postprocessor files with their stats, as lerobot's
save_pretrained writes them) into a robopolicy Diffusion Policy checkpoint: the same U-Net (and
image encoders), normalization, noise schedule and default sampler. lerobot is not needed.

The result loads with Policy.load(DIR) and evaluates with `robopolicy eval --checkpoint DIR`.
Observation keys: observation.state -> state, observation.environment_state ->
environment_state, observation.images.<cam> -> image.<cam> (uint8 HWC). lerobot's
predict_action_chunk returns actions[:, To-1:To-1+Ta]; robopolicy predicts the whole horizon.

A setting robopolicy cannot reproduce is refused with its name (nothing is written), e.g. FiLM
without scale, n_groups other than 8, BatchNorm backbones, resize_shape, and, for now, image
checkpoints (lerobot's image encoder ends in a ReLU that robopolicy's lacks).

exit codes:
  0  converted
  2  usage error, a missing or unreadable file, an --out that may not be written, or a refused setting
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import-checkpoint",
        help="convert a lerobot DiffusionPolicy checkpoint into a robopolicy policy",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", choices=["lerobot"], help="the checkpoint's stack (lerobot: a DiffusionPolicy)")
    p.add_argument("path", help="the checkpoint directory (holds config.json and model.safetensors)")
    p.add_argument("--out", required=True, help="output directory (must be missing or empty unless --overwrite)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it is a robopolicy policy checkpoint already"
    )
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from robopolicy.checkpoints.lerobot import check_checkpoint_out, import_lerobot_checkpoint

    check_checkpoint_out(args.out, overwrite=args.overwrite)  # before reading anything
    conv = import_lerobot_checkpoint(args.path, args.out, overwrite=args.overwrite)
    cfg = conv.policy.config
    fields = ", ".join(f"{f.key} {tuple(f.shape)}" for f in cfg.obs_spec.fields)
    print(f"converted lerobot DiffusionPolicy {args.path} -> {args.out}")
    print(f"  observations: {fields}; action dim {cfg.action_spec.dim}")
    print(
        f"  U-Net down_dims {list(cfg.backbone.down_dims)}, H {cfg.horizon}, To {cfg.n_obs_steps}, Ta {cfg.n_action_steps}"
    )
    print(f"  default sampler {cfg.inference.sampler.value}, {cfg.inference.num_inference_steps} steps")
    for note in conv.notes:
        print(f"  note: {note}")
    print(f"  {len(conv.unused)} settings of training / the runtime are not used here (listed in import.json)")
    return 0
