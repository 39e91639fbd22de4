"""gridpatrol.api.migrations"""
