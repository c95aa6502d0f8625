"""cp/api"""
