"""Size limits of what annotators send, in one place: the API's input serializers, the services
that check them again and the model fields that store them all read these (changing one that
sizes a column needs a migration)."""

MAX_RATIONALE_CHARS = 5_000  # a vote's free-text rationale
MAX_SKIP_REASON_CHARS = 500  # Assignment.skip_reason's column
MAX_SECONDS_SPENT = 86_400  # a vote's time on task: under a day, or it is not a measurement
