"""Label Studio round trip of pre-labels, against a running Label Studio server (its HTTP API).

    python scripts/label_studio_roundtrip.py PRELABEL_DIR IMAGE_DIR --url http://127.0.0.1:PORT --token TOKEN

``PRELABEL_DIR`` is the ``--out`` of ``predict.py --export labelstudio``; ``IMAGE_DIR`` its ``--input``
folder, served by the server's local file storage
(``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` = the parent of IMAGE_DIR). Steps: create a project with
``label_studio_config.xml``, import the tasks with their predictions, turn the predictions into
annotations (what a person accepting them does), export the project as COCO, read the export
back with ``src.corrections.tool_coco_to_set`` and compare every instance with the pre-label
(same count and class per image, mask IoU >= 0.95). ``scripts/check_label_studio.sh`` starts the
server and runs this. Exit codes: 0 every instance came back, 1 a mismatch, 2 bad arguments.
"""

import argparse
import io
import json
import os
import sys
import tempfile
import urllib.request
import zipfile

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from src.annotations import rasterize  # noqa: E402  (after the path set-up)
from src.corrections import tool_coco_to_set  # noqa: E402
from src.prelabels import LABEL_STUDIO_CONFIG_FILE, LABEL_STUDIO_FILE  # noqa: E402

MIN_IOU = 0.95
SPLIT = "train2017"


def _call(url: str, token: str, method: str = "GET", payload=None) -> bytes:
    data = json.dumps(payload).encode("utf-8") if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.read()


def round_trip(prelabel_dir: str, image_dir: str, url: str, token: str, work: str) -> dict:
    """Create, import, accept, export; returns the parsed tasks and the folder of the read-back set."""
    with open(os.path.join(prelabel_dir, LABEL_STUDIO_FILE), encoding="utf-8") as handle:
        tasks = json.load(handle)
    with open(os.path.join(prelabel_dir, LABEL_STUDIO_CONFIG_FILE), encoding="utf-8") as handle:
        label_config = handle.read()
    served = os.path.basename(os.path.abspath(image_dir))
    for task in tasks:  # the images as the server's local file storage serves them
        task["data"]["image"] = f"/data/local-files/?d={served}/{os.path.basename(task['data']['image'])}"
    version = json.loads(_call(f"{url}/api/version", token))
    print(f"Label Studio {version.get('release', version)} at {url}")
    project = json.loads(_call(f"{url}/api/projects", token, "POST",
                               {"title": "pre-label round trip", "label_config": label_config}))
    pid = project["id"]
    imported = json.loads(_call(f"{url}/api/projects/{pid}/import", token, "POST", tasks))
    print(f"project {pid}: imported {imported.get('task_count')} tasks, "
          f"{imported.get('prediction_count')} predictions")
    _call(f"{url}/api/dm/actions?id=predictions_to_annotations&project={pid}", token, "POST",
          {"selectedItems": {"all": True, "excluded": []}})
    archive = _call(f"{url}/api/projects/{pid}/export?exportType=COCO", token)
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        zipped.extractall(os.path.join(work, "export"))
    result = os.path.join(work, "export", "result.json")
    out = os.path.join(work, "set")
    counts = tool_coco_to_set(result, image_dir, out, SPLIT)
    print(f"COCO export of Label Studio read back: {counts['images']} images, {counts['annotations']} annotations")
    return {"tasks": tasks, "set": out}


def compare(tasks, set_dir: str) -> list:
    """Problems between the pre-labels and the read-back set (empty = none)."""
    with open(os.path.join(set_dir, "annotations", f"instances_{SPLIT}.json"), encoding="utf-8") as handle:
        coco = json.load(handle)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image = {img["file_name"]: (img, [a for a in coco["annotations"] if a["image_id"] == img["id"]])
                for img in coco["images"]}
    problems, ious = [], []
    for task in tasks:
        name = os.path.basename(task["data"]["image"].split("=")[-1])
        regions = task["predictions"][0]["result"]
        image, anns = by_image.get(name, (None, []))
        if image is None:
            problems.append(f"{name}: not in the export")
            continue
        height, width = image["height"], image["width"]
        wanted = []
        for region in regions:
            pts = np.asarray(region["value"]["points"], np.float64) * [width / 100.0, height / 100.0]
            wanted.append((region["value"]["polygonlabels"][0], rasterize([pts.ravel().tolist()], height, width)))
        got = [(names[a["category_id"]], rasterize(a["segmentation"], height, width)) for a in anns]
        if len(got) != len(wanted):
            problems.append(f"{name}: {len(got)} instances back, {len(wanted)} pre-labelled")
            continue
        for label, mask in wanted:  # the export's order is not the import's: best match per pre-label
            scores = [(np.logical_and(mask, m).sum() / max(np.logical_or(mask, m).sum(), 1), c) for c, m in got]
            iou, back_label = max(scores, key=lambda s: s[0])
            ious.append(iou)
            if iou < MIN_IOU or back_label != label:
                problems.append(f"{name}: a '{label}' pre-label came back as '{back_label}' with IoU {iou:.3f}")
    if ious:
        print(f"{len(ious)} instances compared: mask IoU min {min(ious):.4f}, mean {np.mean(ious):.4f}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prelabel_dir")
    parser.add_argument("image_dir")
    parser.add_argument("--url", required=True, help="the Label Studio server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--token", required=True, help="an API token of a user of that server")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.prelabel_dir, LABEL_STUDIO_FILE)):
        parser.error(f"{os.path.join(args.prelabel_dir, LABEL_STUDIO_FILE)} not found: run predict.py "
                     f"--export labelstudio --out {args.prelabel_dir} first")
    with tempfile.TemporaryDirectory(prefix="label_studio_roundtrip_") as work:
        state = round_trip(args.prelabel_dir, args.image_dir, args.url.rstrip("/"), args.token, work)
        problems = compare(state["tasks"], state["set"])
    for problem in problems:
        print("FAIL", problem)
    print("Label Studio round trip: every instance came back" if not problems else f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
