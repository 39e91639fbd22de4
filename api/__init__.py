"""gridpatrol.api"""
