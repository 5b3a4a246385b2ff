"""The `default` DatabaseServer: the server of the shared database, kept in step with settings."""
from tenancy.models import DatabaseServer, default_server_values
from tenancy.shared_db import shared_password


def ensure_default_server(using="default", **kwargs):
    """Create or refresh the `default` server row from the default database settings."""
    if using != "default":
        return None
    values = default_server_values()
    server = DatabaseServer.objects.filter(is_default=True).first() or DatabaseServer(name="default", is_default=True)
    password = shared_password()
    changed = any(getattr(server, k) != v for k, v in values.items()) or server.admin_password() != password
    if changed or server.pk is None:
        for key, value in values.items():
            setattr(server, key, value)
        server.set_admin_password(password)
        server.save()
    return server
