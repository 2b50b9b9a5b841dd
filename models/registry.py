"""name -> backend class. Adding a backend: one file in models/ and one line here."""

from models.base import Backend, ModelConfig
from models.delay import Delay
from models.flat import Flat
from models.megabyte import MegaByte
from models.valle import Valle

BACKENDS: dict[str, type[Backend]] = {
    "megabyte": MegaByte,
    "valle": Valle,
    "flat": Flat,
    "delay": Delay,
}


def build_backend(cfg: ModelConfig) -> Backend:
    if cfg.name not in BACKENDS:
        raise ValueError(f"unknown model {cfg.name!r}; valid models: {sorted(BACKENDS)}")
    return BACKENDS[cfg.name](cfg)
