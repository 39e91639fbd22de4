"""gridpatrol.api.migrations.versions"""
