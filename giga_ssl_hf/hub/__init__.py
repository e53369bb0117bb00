"""Sharing on the Hugging Face Hub: model and dataset cards, push, download, and conversion of the original
Giga-SSL checkpoints.

- :mod:`.push`: ``push_model`` / ``push_embeddings`` (``giga-ssl push-model`` / ``push-embeddings``), each with
  a dry run that writes the exact folder the Hub repo would hold;
- :mod:`.download`: ``download_embeddings`` (``giga-ssl download``); ``giga_ssl_hf.load_embeddings`` reads a
  Hub dataset repo directly;
- :mod:`.convert`: ``write_converted`` / ``convert_checkpoint`` (``giga-ssl convert``);
- :mod:`.cards`: ``model_card`` / ``dataset_card``.
"""
