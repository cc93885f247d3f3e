from ami.ml.models.algorithm import Algorithm
from ami.ml.models.pipeline import Pipeline
from ami.ml.models.processing_service import ProcessingService

__all__ = ["Algorithm", "Pipeline", "ProcessingService"]
