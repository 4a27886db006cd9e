"""The mux process, split by role: worker links, instance table, planner, slot table, and the loop joining them."""

from .planner import Leaves
from .process import MuxConfig, mux_main

__all__ = ["Leaves", "MuxConfig", "mux_main"]
