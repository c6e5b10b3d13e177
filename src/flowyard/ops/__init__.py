"""Operations on a platform's data: backup, restore and upgrade."""
