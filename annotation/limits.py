"""Size limits, in one place: the API's input serializers, the annotator page's form fields,
the services that check them again and the model fields that store them all read these
(changing one that sizes a column needs a migration). The two text limits of imports
(``MAX_TEXT_CHARS``, ``MAX_IMPORT_LINE_CHARS``) are settings (``PREFLOOP``), so an
environment can tune them."""

MAX_RATIONALE_CHARS = 5_000  # a vote's free-text rationale
MAX_SKIP_REASON_CHARS = 500  # Assignment.skip_reason's column
MAX_SECONDS_SPENT = 86_400  # a vote's time on task: up to a day, or it is not a measurement
MAX_TAG_CHARS = 50  # one prompt tag
MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # an import file sent to the API (its request body: this plus MULTIPART_SLACK_BYTES)
MULTIPART_SLACK_BYTES = 64 * 1024  # a multipart body's parts besides the file: boundaries, headers, small form fields
MAX_REPORTED_ERRORS = 100  # bad lines an import report lists (the first ones); it counts them all
MAX_ERROR_REASON_CHARS = 300  # one listed reason (a reason may quote a key of the row, which can be long)
IMPORT_BATCH_ROWS = 1_000  # good rows an import writes per batch (all batches in one transaction)
IMPORT_READ_BYTES = 256 * 1024  # bytes an import reads from its file at a time (split into lines at once)
MAX_RUN_ERROR_CHARS = 10_000  # a training run's stored error (the traceback's end)
MAX_METRIC_NAME_CHARS = 100  # TrainingMetric.name's column (a metric name, e.g. "eval_rewards/accuracies")
MAX_PROMOTION_REASON_CHARS = 2_000  # why a policy was promoted or rolled back (API input)
DEFAULT_EVAL_PROMPTS = 64  # eval prompts an evaluation answers, unless asked otherwise (the oldest first)
MAX_EVAL_PROMPTS = 1_000  # the most one evaluation may be asked to answer
PROGRESS_COUNT_CAP = 100  # an annotator's "remaining" is counted up to this (a count over a whole campaign, every lease, would grow with it)
