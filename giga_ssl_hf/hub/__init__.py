"""Sharing on the Hugging Face Hub: model and dataset cards, push, download, and the command line of the
conversion of the original Giga-SSL checkpoints.

- :mod:`.push`: ``push_model`` / ``push_embeddings`` (``giga-ssl push-model`` / ``push-embeddings``), each with
  a dry run that writes the exact folder the Hub repo would hold;
- :mod:`.download`: ``download_embeddings`` (``giga-ssl download``); ``giga_ssl_hf.load_embeddings`` reads a
  Hub dataset repo directly;
- :mod:`.convert`: ``convert_checkpoint`` / ``write_converted`` (``giga-ssl convert``): the safe load, summary
  and output folder around the conversion that lives beside the model
  (``giga_ssl_hf.models.gigassl.convert_gigassl_original_to_hf``);
- :mod:`.cards`: ``model_card`` / ``dataset_card``, filled from the text in ``templates/``.
"""
