"""Evaluation apart from inference: network predictions -> COCO results -> COCOeval metrics -> report.

One module per job (import from the module itself; this package re-exports nothing):

``results``         one image's network outputs -> original-image detections -> COCO result dicts:
                    boxes mapped back (``boxes_to_original_image``), 28x28 masks pasted back
                    (``paste_masks``), compressed RLE (``encode_masks``), ``Detections``,
                    ``predictions_to_original`` / ``predictions_to_coco`` / ``detections_to_coco``
``coco_eval``       ``COCOEvaluator`` (accumulates results, runs COCOeval for bbox and segm),
                    ``run_cocoeval``, ``coco_evaluate``, COCO's 12 stats for any maxDets
                    (``summarize_cocoeval``, ``max_dets_setting``), the per-class AP table
``inference``       ``build_eval_split`` (eval pipeline + evaluator, annotation file read once),
                    ``run_inference``, ``evaluate_model``
``hook``            ``EvalCallback``: evaluation every few epochs during training, best checkpoint
``error_analysis``  AP lost per error kind, best-F1 score thresholds, per-image errors
``report_data``     the report's numbers (report.json) and ``load_score_thresholds``
``report_page``     report.html and its pictures
``report``          ``write_report`` and the command line
                    ``python -m src.evaluation.report --ann_file ANN --detections DET.json --image_dir DIR --out OUT``
"""
