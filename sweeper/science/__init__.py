"""The science (layer 3): threat models and attacks (``threat``, ``attacks``, ``aa``), dataset synthesis
(``synthesis``), training and evaluation (``training``, ``evaluation``), architectures (``models``) and the
datasets, from local files (``data``) or pushed into a store (``data_store``). Torch; no Ray, no W&B."""
