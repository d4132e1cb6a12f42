"""robopolicy: imitation policies for robot manipulation behind one interface."""

__version__ = "0.1.0"
