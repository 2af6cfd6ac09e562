"""Checkpoints: names, conversion, files and loading, one module per job.

Import each name from the module that holds it (this file re-exports nothing):

* ``src.checkpoint.names``: kinds of checkpoint (``KIND_*``, ``CONVERT_MODES``), name prefixes,
  optimizer / training-state names (``is_training_state``, ``GLOBAL_STEP_NAME``,
  ``LAST_CHECKPOINT_NAME``), the stored metadata keys (``NUMERICS_KEY``, ``CONVERTED_FROM_KEY``)
  and the rename tables of the model zoo and torchvision (``ZOO_RESNET50_TO_OURS``,
  ``ZOO_MASKRCNN_TO_OURS``, ``TORCHVISION_RESNET50_TO_OURS``, ``TORCHVISION_MASKRCNN_TO_OURS``,
  ``RESNET50_SHAPES``).
* ``src.checkpoint.io``: ``CheckpointError``; reading files (``read_checkpoint``,
  ``read_checkpoint_with_metadata``, ``read_weights`` for ``.ckpt`` / ``.safetensors`` / ``.pth``),
  value checks (``check_checkpoint_values``) and ``save_checkpoint_atomic``.
* ``src.checkpoint.convert``: ``detect_checkpoint_kind``, the converters (``convert_resnet50``,
  ``convert_zoo_maskrcnn``, ``convert_torchvision_resnet50``, ``convert_torchvision_maskrcnn``,
  ``CONVERTERS``), ``convert_foreign_checkpoint`` (what ``convert_checkpoint.py`` runs) and
  ``ConversionReport``.
* ``src.checkpoint.load``: ``load_pretrained`` with its ``LoadReport`` / ``SkippedParam``, and
  ``load_train_state`` (``train.py --resume``).
"""
