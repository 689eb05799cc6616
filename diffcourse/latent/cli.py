"""Chapter 4's training subcommands of ``python -m diffcourse.train`` (book §4.2, §4.7).

    python -m diffcourse.train vae --out zoo/shapes_vae                                # the VAE (§4.2)
    python -m diffcourse.train latent-sd --vae zoo/shapes_vae --out zoo/shapes_sd      # text + U-Net (§4.7)
"""
from __future__ import annotations

from .train_latent import add_latent_sd_parser, train_latent_cli
from .train_vae import add_vae_parser, train_vae_cli

__all__ = ["add_latent_parsers", "LATENT_COMMANDS"]


def add_latent_parsers(sub, parents) -> None:
    """Add the ``vae`` and ``latent-sd`` subcommands to ``diffcourse.train``'s parser (book §4.2, §4.7)."""
    add_vae_parser(sub, parents)
    add_latent_sd_parser(sub, parents)


#: subcommand -> function(args) -> info dict with "seconds"
LATENT_COMMANDS = {"vae": train_vae_cli, "latent-sd": train_latent_cli}
