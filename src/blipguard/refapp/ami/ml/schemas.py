"""Processing-service payload schemas (fact sheet §6), pydantic v1 API.

v1 ignores unknown fields unless a model says otherwise and coerces ints to ``str``.
"""

import datetime

import pydantic


class BoundingBox(pydantic.BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float

    @classmethod
    def from_coords(cls, coords, raise_on_error: bool = True) -> "BoundingBox | None":
        try:
            x1, y1, x2, y2 = coords
            return cls(x1=x1, y1=y1, x2=x2, y2=y2)
        except (TypeError, ValueError, pydantic.ValidationError):
            if raise_on_error:
                raise
            return None

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    def to_string(self) -> str:
        return f"{self.x1},{self.y1},{self.x2},{self.y2}"

    def to_path(self) -> str:
        return "-".join(str(int(v)) for v in self.to_tuple())

    def to_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


class AlgorithmReference(pydantic.BaseModel):
    name: str
    key: str


class AlgorithmCategoryMapResponse(pydantic.BaseModel):
    data: list[dict] = pydantic.Field(default_factory=dict)
    labels: list[str] = pydantic.Field(default_factory=list)
    version: str | None = None
    description: str | None = None
    uri: str | None = None


class AlgorithmConfigResponse(pydantic.BaseModel):
    name: str
    key: str
    description: str | None = None
    task_type: str | None = None
    version: int = 1
    version_name: str | None = None
    uri: str | None = None
    category_map: AlgorithmCategoryMapResponse | None = None

    class Config:
        extra = "ignore"


class ClassificationResponse(pydantic.BaseModel):
    classification: str
    labels: list[str] | None = None
    scores: list[float] = []
    logits: list[float] | None = None
    inference_time: float | None = None
    algorithm: AlgorithmReference
    terminal: bool = True
    timestamp: datetime.datetime


class SourceImageResponse(pydantic.BaseModel):
    id: str
    url: str

    class Config:
        extra = "ignore"


class DetectionResponse(pydantic.BaseModel):
    source_image_id: str
    bbox: BoundingBox | None = None
    inference_time: float | None = None
    algorithm: AlgorithmReference
    timestamp: datetime.datetime
    crop_image_url: str | None = None
    classifications: list[ClassificationResponse] = []


class PipelineResultsResponse(pydantic.BaseModel):
    pipeline: str
    # Deprecated on the platform, kept for compatibility.
    algorithms: dict[str, AlgorithmConfigResponse] = pydantic.Field(default_factory=dict)
    total_time: float
    source_images: list[SourceImageResponse]
    detections: list[DetectionResponse]
    errors: list | str | None = None


class PipelineResultsError(pydantic.BaseModel):
    error: str
    image_id: str | None = None


class PipelineProcessingTask(pydantic.BaseModel):
    id: str
    image_id: str
    image_url: str
    reply_subject: str | None = None


class PipelineTaskResult(pydantic.BaseModel):
    reply_subject: str
    result: PipelineResultsResponse | PipelineResultsError


class ProcessingServiceClientInfo(pydantic.BaseModel):
    class Config:
        extra = "allow"
