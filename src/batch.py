"""The batch contract between the data pipeline and the network, defined once.

Training batch (columns of ``create_new_dataset(..., is_training=True)``, in this order);
``B`` = batch size, ``N`` = ``config.max_instance_count``, ``H, W`` = ``config.img_height,
config.img_width`` (the padded network input):

==============  ==================  =========================================================
column          shape / dtype       meaning
==============  ==================  =========================================================
image           [B, 3, H, W] f32    RGB, normalised with img_mean/img_std, zero padded at the
                                    bottom/right after the keep-ratio resize
image_shape     [B, 4] f32          (resized_h, resized_w, scale_h, scale_w): the un-padded
                                    image size inside the input and the resize factors
                                    (input pixels per original pixel)
box             [B, N, 4] f32       x1, y1, x2, y2 in input pixels (after resize and flip)
label           [B, N] i32          1..num_classes-1 for objects, ``CROWD_LABEL`` for crowd
                                    regions (to be ignored, never a positive), 0 for padding
instance_valid  [B, N] i32          1 for a real (non-crowd) instance, 0 for padding and crowd
mask            [B, N, H, W] u8     instance segmentation, 1 on the object's pixels, aligned
                                    with ``image``
==============  ==================  =========================================================

Real instances come first, then crowd regions, then padding.

Evaluation / inference batch: ``image``, ``image_shape`` as above plus ``image_id`` [B] i32
(the COCO image id, for the evaluator; ``PAD_IMAGE_ID`` for the padding items that complete the
last batch, which the evaluator skips).

Network predictions (inference, ``K`` = ``config.test_max_per_img``):

=============  ==================  =========================================================
boxes          [B, K, 4] f32       x1, y1, x2, y2 in input pixels (divide by scale to map
                                   back to the original image)
scores         [B, K] f32          class confidence
labels         [B, K] i32          1..num_classes-1 (contiguous label, see COCOSubDataset)
valid          [B, K] bool         True for a real detection, False for padding
masks          [B, K, M, M] f32    mask probabilities inside the box, M =
                                   ``Config.mask_out_size`` (28 for roi_mask_size 14)
=============  ==================  =========================================================
"""

TRAIN_COLUMNS = ("image", "image_shape", "box", "label", "instance_valid", "mask")
EVAL_COLUMNS = ("image", "image_shape", "image_id")
PREDICTION_NAMES = ("boxes", "scores", "labels", "valid", "masks")

# Image id of the padding items that complete the last evaluation batch.
PAD_IMAGE_ID = -1

# Label of a crowd (iscrowd=1) region: anchors/RoIs mostly inside one are ignored, not negatives.
CROWD_LABEL = -1

# The five training losses, in the order the network returns them.
LOSS_NAMES = ("rpn_cls", "rpn_reg", "rcnn_cls", "rcnn_reg", "rcnn_mask")
