"""gridpatrol.api.routers"""
