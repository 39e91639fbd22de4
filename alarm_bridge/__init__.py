"""gridpatrol.alarm_bridge"""
