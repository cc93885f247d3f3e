"""Validate one processing-service result before anything touches Redis. Pure."""

from dataclasses import dataclass

from .errors import InvalidResult


@dataclass(frozen=True)
class ParsedResult:
    image_ids: tuple[int, ...]  # every image the result covers
    failed_ids: tuple[int, ...]  # the ones the service reports as failed
    error: str | None
    detections: int
    invalid: bool = False  # the error is ours (a malformed payload), not the service's


def _image_id(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidResult(f"{where} must be an integer image id, got {type(value).__name__} {value!r:.60}")
    try:
        return int(value)
    except ValueError:
        raise InvalidResult(f"{where} must be an integer image id, got {value!r:.60}") from None


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidResult(f"{where} must be a number, got {type(value).__name__} {value!r:.60}")
    return float(value)


def best_image_id(data) -> int | None:
    """The image a result is about, when the payload says so clearly enough."""
    if not isinstance(data, dict):
        return None
    for candidate in (data.get("image_id"), _first_source_id(data)):
        try:
            return _image_id(candidate, "image id")
        except InvalidResult:
            continue
    return None


def _first_source_id(data: dict):
    images = data.get("source_images")
    if isinstance(images, list) and images and isinstance(images[0], dict):
        return images[0].get("id")
    return None


def parse_result(data) -> ParsedResult:
    """Check the shape and types of a result; raise InvalidResult naming the first problem."""
    if not isinstance(data, dict):
        raise InvalidResult(f"result must be a JSON object, got {type(data).__name__}")
    if "error" in data:
        image_id = _image_id(data.get("image_id"), "error result `image_id`")
        return ParsedResult((image_id,), (image_id,), str(data["error"])[:500], 0)

    images = data.get("source_images")
    if not isinstance(images, list) or not images:
        raise InvalidResult("result needs a non-empty `source_images` list or an `error`", best_image_id(data))
    ids = []
    for k, img in enumerate(images):
        if not isinstance(img, dict):
            raise InvalidResult(f"`source_images[{k}]` must be an object", best_image_id(data))
        ids.append(_image_id(img.get("id"), f"`source_images[{k}].id`"))

    detections = data.get("detections", [])
    if not isinstance(detections, list):
        raise InvalidResult("`detections` must be a list", ids[0])
    for k, det in enumerate(detections):
        where = f"`detections[{k}]`"
        if not isinstance(det, dict):
            raise InvalidResult(f"{where} must be an object", ids[0])
        if _image_id(det.get("source_image_id"), f"{where}.source_image_id") not in ids:
            raise InvalidResult(f"{where} names image {det.get('source_image_id')} not in `source_images`", ids[0])
        bbox = det.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise InvalidResult(f"{where}.bbox must be a list of 4 numbers", ids[0])
        for c in bbox:
            _number(c, f"{where}.bbox")
        if not isinstance(det.get("label"), str):
            raise InvalidResult(f"{where}.label must be a string", ids[0])
        _number(det.get("score"), f"{where}.score")
    return ParsedResult(tuple(ids), (), None, len(detections))
