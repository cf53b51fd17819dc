"""jaxpoison: data poisoning research with influence functions, in JAX.

Layers (imports point down): ``experiments``/``cli`` → attacks, selection,
detection, unlearning → ``influence`` → ``models``, ``training`` → ``data``.
"""

__version__ = "0.1.0"
