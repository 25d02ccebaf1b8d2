from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _roles_after_migrate(sender, **kwargs):
    """Re-grant each role its permissions after every migrate: permissions that a migration
    adds (e.g. ``manage_training``) exist only once auth's own post_migrate has created them,
    and an existing admin or reviewer group must get them without anyone running a command."""
    from annotation.roles import roles_ensure

    roles_ensure()


class AnnotationConfig(AppConfig):
    name = "annotation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Connected after auth's handler (auth is installed first), so the new permissions exist.
        post_migrate.connect(_roles_after_migrate, sender=self, dispatch_uid="annotation-roles")
