"""Strong lottery tickets in generative models: the science (generator, masks, search, data, metrics)."""
