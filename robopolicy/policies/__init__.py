"""Built-in policies. Importing this package registers them."""

from robopolicy.policies import diffusion  # noqa: F401
