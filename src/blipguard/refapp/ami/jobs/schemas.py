"""Job API schemas (fact sheet §6)."""

import pydantic


class QueuedTaskAcknowledgment(pydantic.BaseModel):
    reply_subject: str
    status: str
    task_id: str
