"""Job API serializers (fact sheet §7). Minimal: what the result path's endpoints need."""

from rest_framework import serializers

from ami.jobs.models import Job, render_job_logs


class JobSerializer(serializers.ModelSerializer):
    progress = serializers.SerializerMethodField()
    logs = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id",
            "name",
            "status",
            "dispatch_mode",
            "job_type_key",
            "project",
            "pipeline",
            "progress",
            "logs",
            "created_at",
            "updated_at",
            "started_at",
            "finished_at",
        ]

    def get_progress(self, obj: Job) -> dict:
        return obj.progress.dict()

    def get_logs(self, obj: Job) -> dict:
        request = self.context.get("request")
        limit = 1000
        if request is not None:
            try:
                limit = int(request.query_params.get("logs_limit", 1000))
            except ValueError:
                limit = 1000
        return render_job_logs(obj, max(1, min(limit, 5000)))


class TasksRequestSerializer(serializers.Serializer):
    batch_size = serializers.IntegerField(min_value=1, required=True)
    client_info = serializers.JSONField(required=False)

    def validate_client_info(self, value):
        if value is not None and not isinstance(value, dict):
            raise serializers.ValidationError("client_info must be an object")
        return value


class ResultsRequestSerializer(serializers.Serializer):
    results = serializers.ListField(child=serializers.JSONField(), allow_empty=True)
    client_info = serializers.JSONField(required=False)
