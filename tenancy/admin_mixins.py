"""Admin building blocks shared by the apps."""


class ReadOnlyAdmin:
    """For records made by the system (credentials, run history, API calls): nobody adds,
    changes or deletes them from the admin. Mix in before admin.ModelAdmin / an inline."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
