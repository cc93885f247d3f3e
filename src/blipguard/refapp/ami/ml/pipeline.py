"""Saving a processing service's results (idempotent per image and box, as upstream)."""

from ami.main.models import Detection


def save_results(result: dict, job_id: int) -> int:
    """Store the detections of one pipeline response; returns how many it holds."""
    detections = result.get("detections", [])
    for det in detections:
        Detection.objects.get_or_create(
            job_id=job_id,
            source_image_id=int(det["source_image_id"]),
            bbox=det["bbox"],
            defaults={"label": det["label"], "score": float(det["score"])},
        )
    return len(detections)
