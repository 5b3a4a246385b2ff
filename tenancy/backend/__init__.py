"""The database backend of the shared database (settings ENGINE "tenancy.backend")."""
